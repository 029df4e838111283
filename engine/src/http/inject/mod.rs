//! HTTP injection: `POST /api/inject/v1`, with the request and response
//! of KumoMTA's API of the same name ([`request`]), on its own listener
//! (`[http] listen`), served by hyper on a tokio runtime off the shards.
//!
//! Injected mail takes SMTP's path: the envelope is checked with the SMTP
//! grammar, relaying is allowed as for an authenticated client or one in
//! `[relay] networks`, suppressed recipients are refused, the messages
//! ([`build`]) are handed to a shard through its inbox, which finishes
//! them as it finishes a session's (`Received:`, `Message-ID` and `Date`
//! if missing, unsubscribe links, DKIM signing), appends them, records
//! the `received` event (`"protocol":"http"`) and answers once the
//! spool's group commit covers them. Only then does the injector get its
//! answer:
//!
//! ```json
//! {"success_count": 2, "fail_count": 1, "failed_recipients": ["c@example.net"],
//!  "errors": ["c@example.net: suppressed (global): hard bounce"]}
//! ```
//!
//! Who may inject: off loopback the listener speaks TLS (the `[tls]`
//! certificate) and every request needs credentials: HTTP Basic with an
//! `[auth]` user (verified by the AUTH verifier's threads; the user then
//! flows with the message as after SMTP AUTH: DKIM key, pool, events), or
//! `Authorization: Bearer` with the token in `[http] token_file`. On
//! loopback a request needs none unless `auth_required` or a token is set.
//!
//! Answers: `200` with the counts once the request was taken (some
//! recipients may have failed); `400` naming the field of a bad request;
//! `401` without the right credentials; `403` for a client that may not
//! relay or a sender its user may not use; `404`, `405` for other paths and
//! methods; `413` for a body over `http.body_bytes_max`; `503` when the
//! server is stopping, its messages would take more than the data in
//! flight may (`limits.data_in_flight_max`), or a shard did not answer
//! in time.

#![forbid(unsafe_code)]

pub mod build;
pub mod request;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use baton_spool::QueueId;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use serde::Serialize;

use crate::admin::AdminToken;
use crate::auth::verify::{Credentials, Identity, Verdict};
use crate::inbound::{from_domains, received_headers, AcceptedRecipient, Held, StoreError};
use crate::log_limit::LogLimit;
use crate::server::Server;
use crate::shard::ShardMsg;
use crate::smtp::address::{parse_forward_path, parse_reverse_path, ForwardPath};

use self::build::{Draft, Limits};
use self::request::{BadRequest, Request};
use super::Serving;

/// The one path served.
pub const INJECT_PATH: &str = "/api/inject/v1";
/// Connections served at once; past this, new ones are closed at once.
pub const INJECT_CONNECTIONS_MAX: usize = 256;
/// The TLS handshake and each request's header must arrive within this.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection may live: a large request's upload, its
/// messages' building, signing and commit.
const CONNECTION_TIME_MAX: Duration = Duration::from_secs(300);
/// How long a request waits for its shard to report the messages durable
/// before it is answered 503.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// An injection's messages, for a shard to finish and store.
pub struct Injection {
    pub messages: Vec<Injected>,
    pub peer: SocketAddr,
    /// Whether the request came over TLS.
    pub tls: bool,
    /// The `[auth]` user the injector authenticated as, if it did.
    pub identity: Option<Arc<Identity>>,
    /// Each message's outcome, in order, once all are durable or refused.
    pub reply: tokio::sync::oneshot::Sender<Vec<Stored>>,
}

/// One injected message, before the shard gives it a queue id.
pub struct Injected {
    /// `local@domain`; empty for the null reverse path.
    pub reverse_path: Vec<u8>,
    /// As MAIL's would be: `BODY=8BITMIME`, `SMTPUTF8`.
    pub mail_params: Vec<u8>,
    pub recipients: Vec<AcceptedRecipient>,
    /// The message in wire form (CRLF, dot-stuffed), without baton's
    /// `Received:` field.
    pub wire: Vec<u8>,
}

/// What became of one injected message.
pub type Stored = Result<QueueId, StoreError>;

/// Binds `[http] listen`, if set: before the shards start, so that a bad
/// address fails the start.
pub fn bind(
    server_config: &crate::config::Config,
) -> std::io::Result<Option<std::net::TcpListener>> {
    let Some(address) = server_config.http.listen else {
        return Ok(None);
    };
    std::net::TcpListener::bind(address)
        .map(Some)
        .map_err(|err| std::io::Error::new(err.kind(), format!("http listener {address}: {err}")))
}

/// Loads `[http] token_file`, if set.
pub fn load_token(config: &crate::config::HttpConfig) -> Result<Option<AdminToken>, String> {
    config
        .token_file
        .as_deref()
        .map(|path| AdminToken::load_for(path, "http.token_file"))
        .transpose()
}

/// What every request is checked and served with.
struct Listener {
    server: Arc<Server>,
    token: Option<AdminToken>,
    tls: bool,
    /// Requests go to the shards in turn.
    next_shard: AtomicUsize,
    /// Refused credentials are logged, but a client guessing must not
    /// flood the log.
    refusals: Mutex<LogLimit>,
}

/// Serves `listener` on a thread of its own until the process ends.
pub fn start(
    listener: std::net::TcpListener,
    server: Arc<Server>,
    token: Option<AdminToken>,
) -> std::io::Result<()> {
    let tls = server.config.http.tls();
    let acceptor = match (tls, server.server_tls.as_ref()) {
        (false, _) => None,
        (true, Some(certificates)) => Some(super::tls_acceptor(certificates)),
        // Validation requires a certificate off loopback.
        (true, None) => {
            return Err(std::io::Error::other(
                "http.listen needs a [tls] certificate",
            ))
        }
    };
    let serving = Serving {
        name: "inject",
        connections_max: INJECT_CONNECTIONS_MAX,
        io_timeout: IO_TIMEOUT,
        connection_time_max: CONNECTION_TIME_MAX,
        tls: acceptor,
    };
    let state = Arc::new(Listener {
        server,
        token,
        tls,
        next_shard: AtomicUsize::new(0),
        refusals: Mutex::new(LogLimit::default()),
    });
    let answer = move |request, peer| {
        let state = state.clone();
        async move { answer(request, &state, peer).await }
    };
    super::spawn("inject", super::serve(listener, serving, answer))
}

async fn answer(
    request: HttpRequest<Incoming>,
    listener: &Arc<Listener>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if request.uri().path() != INJECT_PATH {
        return problem(
            StatusCode::NOT_FOUND,
            format!("nothing here; POST {INJECT_PATH}"),
        );
    }
    if request.method() != Method::POST {
        let mut response = problem(StatusCode::METHOD_NOT_ALLOWED, "POST only".into());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let server = &listener.server;
    if server.shutting_down.load(Ordering::Acquire) {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping; try again".into(),
        );
    }
    let client = match authenticate(&request, listener, peer).await {
        Ok(client) => client,
        Err(refused) => {
            let count = listener
                .refusals
                .lock()
                .ok()
                .and_then(|mut limit| limit.hit());
            if let Some(count) = count {
                tracing::warn!(%peer, count, "inject: request without valid credentials refused");
            }
            return refused;
        }
    };
    let body_bytes_max = server.config.http.body_bytes_max;
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let too_large = || {
        problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over http.body_bytes_max ({body_bytes_max} bytes)"),
        )
    };
    if announced.is_some_and(|length| length > body_bytes_max) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), body_bytes_max as usize)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return too_large(),
    };
    let request = match Request::parse(&body) {
        Ok(request) => request,
        Err(BadRequest(why)) => return problem(StatusCode::BAD_REQUEST, why),
    };
    drop(body);
    let recipients_max = server.config.http.recipients_per_request_max;
    if request.recipients.len() > recipients_max {
        return problem(
            StatusCode::BAD_REQUEST,
            format!(
                "recipients: {} of them, over http.recipients_per_request_max ({recipients_max})",
                request.recipients.len()
            ),
        );
    }
    // As SMTP's RCPT: relaying for authenticated clients and [relay] networks.
    let trusted =
        client.identity.is_some() || client.token || server.config.relay.allows(peer.ip());
    if !trusted {
        return problem(
            StatusCode::FORBIDDEN,
            "relaying denied: authenticate, or inject from a [relay] network".into(),
        );
    }
    let planning = {
        let server = server.clone();
        let identity = client.identity.clone();
        tokio::task::spawn_blocking(move || plan(&server, request, identity.as_ref()))
    };
    let planned = match planning.await {
        Ok(Ok(planned)) => planned,
        Ok(Err(refused)) => return refused,
        Err(_) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request could not be prepared".into(),
            )
        }
    };
    let answer = store(listener, planned, peer, client.identity).await;
    match answer {
        Ok(answer) => json(StatusCode::OK, &answer),
        Err(refused) => refused,
    }
}

/// Who sent a request, as its credentials said.
struct Client {
    /// An `[auth]` user, by HTTP Basic.
    identity: Option<Arc<Identity>>,
    /// The bearer token of `[http] token_file`.
    token: bool,
}

/// Checks a request's credentials: `Err` is the 401 to answer.
async fn authenticate(
    request: &HttpRequest<Incoming>,
    listener: &Listener,
    peer: SocketAddr,
) -> Result<Client, Response<Full<Bytes>>> {
    let server = &listener.server;
    let refuse = |why: &str| Err(unauthorized(listener, why));
    let Some(value) = request.headers().get(AUTHORIZATION) else {
        if server.config.http.credentials_required() {
            return refuse(
                "credentials needed: HTTP Basic with an [auth] user, or Bearer with the token",
            );
        }
        return Ok(Client {
            identity: None,
            token: false,
        });
    };
    let value = value.as_bytes();
    let (scheme, rest) =
        value.split_at(value.iter().position(|&b| b == b' ').unwrap_or(value.len()));
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case(b"bearer") {
        return match &listener.token {
            Some(token) if token.matches(rest) => Ok(Client {
                identity: None,
                token: true,
            }),
            _ => refuse("the bearer token is not the one in http.token_file"),
        };
    }
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return refuse("Authorization must be Basic or Bearer");
    }
    let Some(verifier) = &server.verifier else {
        return refuse("no [auth] users to check a name and password against");
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest)
        .ok()
        .and_then(|text| String::from_utf8(text).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|text| text.split_once(':')) else {
        return refuse("Basic credentials must be base64 of user:password");
    };
    let credentials = Credentials {
        user: user.to_owned(),
        password: password.as_bytes().to_vec(),
        client: peer.ip(),
    };
    // Hashes are verified on the verifier's threads, never on this runtime.
    let (tx, rx) = tokio::sync::oneshot::channel();
    verifier.verify(credentials, move |verdict| {
        let _ = tx.send(verdict);
    });
    match rx.await {
        Ok(Verdict::Accepted(identity)) => {
            server
                .metrics
                .auth_successes
                .fetch_add(1, Ordering::Relaxed);
            Ok(Client {
                identity: Some(identity),
                token: false,
            })
        }
        Ok(_) | Err(_) => {
            server.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            refuse("the user name or password is not right, or too many attempts failed")
        }
    }
}

fn unauthorized(listener: &Listener, why: &str) -> Response<Full<Bytes>> {
    let mut response = problem(StatusCode::UNAUTHORIZED, why.to_owned());
    let mut challenges = Vec::new();
    if listener.server.verifier.is_some() {
        challenges.push("Basic realm=\"baton inject\"");
    }
    if listener.token.is_some() {
        challenges.push("Bearer realm=\"baton inject\"");
    }
    if let Ok(value) = HeaderValue::from_str(&challenges.join(", ")) {
        if !challenges.is_empty() {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// The messages to store, and the recipients refused before any was made.
struct Planned {
    request: Request,
    messages: Vec<(Injected, Vec<usize>)>,
    failed: Vec<(usize, String)>,
    /// The messages' share of the data in flight, until they are stored.
    held: Held,
}

/// Checks the envelope and makes the messages, as an SMTP session with a
/// trusted client would take them. Off the runtime's thread: templating,
/// MIME and suppression lookups take time.
fn plan(
    server: &Server,
    request: Request,
    identity: Option<&Arc<Identity>>,
) -> Result<Planned, Response<Full<Bytes>>> {
    let bad = |why: String| problem(StatusCode::BAD_REQUEST, why);
    let (reverse_path, sender_utf8) =
        sender(&request.envelope_sender).map_err(|why| bad(format!("envelope_sender: {why}")))?;
    let sender_domain = reverse_path
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(&[][..], |at| &reverse_path[at + 1..]);
    if let Some(identity) = identity {
        let domain = String::from_utf8_lossy(sender_domain);
        if !sender_domain.is_empty() && !identity.policy.allows_sender_domain(&domain) {
            return Err(problem(
                StatusCode::FORBIDDEN,
                format!(
                    "envelope_sender: user {} may not send from {domain}",
                    identity.name
                ),
            ));
        }
    }
    let user = identity.map(|identity| identity.name.as_str());
    let mut suppression = server.suppression.as_ref().map(|list| list.reader());
    let mut failed = Vec::new();
    let mut accepted = Vec::new();
    let mut addresses: Vec<Option<(AcceptedRecipient, bool)>> =
        Vec::with_capacity(request.recipients.len());
    for (index, recipient) in request.recipients.iter().enumerate() {
        let parsed = match self::recipient(&recipient.email) {
            Ok(parsed) => parsed,
            Err(why) => {
                failed.push((index, why));
                addresses.push(None);
                continue;
            }
        };
        let hit = suppression
            .as_mut()
            .and_then(|reader| reader.lookup(&parsed.0.address, sender_domain, user))
            .map(|hit| format!("suppressed ({}): {}", hit.scope(), hit.reason()));
        if let Some(why) = hit {
            server
                .metrics
                .recipients_suppressed
                .fetch_add(1, Ordering::Relaxed);
            failed.push((index, why));
            addresses.push(None);
            continue;
        }
        accepted.push(index);
        addresses.push(Some(parsed));
    }
    let limits = Limits {
        text_line_bytes_max: server.config.limits.text_line_bytes_max,
        message_bytes_max: server.config.limits.message_bytes_max,
        recipients_per_message_max: identity
            .and_then(|identity| identity.policy.recipients_per_message_max)
            .map_or(server.config.limits.recipients_per_message_max, |max| {
                max as usize
            })
            .min(server.config.limits.recipients_per_message_max),
    };
    let drafts = build::drafts(&request, &accepted, &limits).map_err(|BadRequest(why)| bad(why))?;
    // The messages wait in memory until the spool has them: they count
    // against the data in flight, as SMTP sessions' messages do.
    let mut held = Held::new(&server.data_budget);
    let mut held_bytes = 0;
    let mut messages = Vec::new();
    for Draft { recipients, wire } in drafts {
        held_bytes += wire.as_ref().map_or(0, |wire| wire.capacity() as u64);
        if !held.resize(held_bytes) {
            return Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "too much message data in flight (limits.data_in_flight_max): nothing was queued; \
                 try again later, or with fewer recipients"
                    .into(),
            ));
        }
        let checked = wire.and_then(|wire| check(server, &wire, identity).map(|()| wire));
        let wire = match checked {
            Ok(wire) => wire,
            Err(why) => {
                failed.extend(recipients.iter().map(|&index| (index, why.clone())));
                continue;
            }
        };
        let accepted: Vec<AcceptedRecipient> = recipients
            .iter()
            .filter_map(|&index| addresses[index].as_ref().map(|(r, _)| r.clone()))
            .collect();
        let utf8 = sender_utf8
            || recipients
                .iter()
                .any(|&index| addresses[index].as_ref().is_some_and(|(_, utf8)| *utf8));
        let mut params = Vec::new();
        if !wire.is_ascii() {
            params.push("BODY=8BITMIME");
        }
        if utf8 {
            params.push("SMTPUTF8");
        }
        let injected = Injected {
            reverse_path: reverse_path.clone(),
            mail_params: params.join(" ").into_bytes(),
            recipients: accepted,
            wire,
        };
        messages.push((injected, recipients));
    }
    Ok(Planned {
        request,
        messages,
        failed,
        held,
    })
}

/// What SMTP's end of data checks of a trusted client's message: a mail
/// loop, the user's `From:` domains, the user's hourly allowance.
fn check(server: &Server, wire: &[u8], identity: Option<&Arc<Identity>>) -> Result<(), String> {
    // baton's own Received: comes on top.
    if received_headers(wire) + 1 > server.config.limits.received_headers_max {
        return Err("too many Received: fields: a mail loop (RFC 5321 §6.3)".into());
    }
    let Some(identity) = identity else {
        return Ok(());
    };
    if let Some(domain) = from_domains(wire)
        .into_iter()
        .find(|domain| !identity.policy.allows_sender_domain(domain))
    {
        return Err(format!(
            "user {} may not send as From: {domain}",
            identity.name
        ));
    }
    let allowed = server
        .verifier
        .as_ref()
        .is_none_or(|verifier| verifier.take_message(identity));
    if !allowed {
        return Err(format!(
            "user {} has sent its messages_per_hour",
            identity.name
        ));
    }
    Ok(())
}

/// The envelope sender: an address with or without its brackets, or
/// empty for the null reverse path; and whether it needs SMTPUTF8.
fn sender(text: &str) -> Result<(Vec<u8>, bool), String> {
    let bracketed = format!(
        "<{}>",
        text.trim().trim_start_matches('<').trim_end_matches('>')
    );
    match parse_reverse_path(bracketed.as_bytes(), true) {
        Ok((path, used)) if used == bracketed.len() => {
            Ok((path.address().into_bytes(), !path.is_ascii()))
        }
        _ => Err(format!("{text:?} is not an address")),
    }
}

/// A recipient checked with RCPT's grammar, and whether it needs SMTPUTF8.
fn recipient(text: &str) -> Result<(AcceptedRecipient, bool), String> {
    let bracketed = format!(
        "<{}>",
        text.trim().trim_start_matches('<').trim_end_matches('>')
    );
    match parse_forward_path(bracketed.as_bytes(), true) {
        Ok((ForwardPath::Path(path), used)) if used == bracketed.len() => {
            let utf8 = !path.is_ascii();
            let recipient = AcceptedRecipient {
                address: path.address().into_bytes(),
                domain: path.routing_domain(),
                params: Vec::new(),
            };
            Ok((recipient, utf8))
        }
        _ => Err(format!("{text:?} is not an address")),
    }
}

/// The answer, KumoMTA's shape.
#[derive(Debug, Serialize)]
struct Answer {
    success_count: usize,
    fail_count: usize,
    failed_recipients: Vec<String>,
    errors: Vec<String>,
}

/// Hands the messages to a shard and waits until they are durable.
async fn store(
    listener: &Listener,
    planned: Planned,
    peer: SocketAddr,
    identity: Option<Arc<Identity>>,
) -> Result<Answer, Response<Full<Bytes>>> {
    let Planned {
        request,
        messages,
        mut failed,
        held,
    } = planned;
    let (messages, groups): (Vec<Injected>, Vec<Vec<usize>>) = messages.into_iter().unzip();
    let mut success_count = 0;
    if !messages.is_empty() {
        let server = &listener.server;
        let shard = listener.next_shard.fetch_add(1, Ordering::Relaxed) % server.links.len();
        let (reply, stored) = tokio::sync::oneshot::channel();
        let injection = Injection {
            messages,
            peer,
            tls: listener.tls,
            identity,
            reply,
        };
        server.links[shard].send(ShardMsg::Inject(Box::new(injection)));
        let outcomes = match tokio::time::timeout(SHARD_REPLY_TIMEOUT, stored).await {
            Ok(Ok(outcomes)) => outcomes,
            _ => {
                return Err(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no answer from the spool in time: the messages may or may not be queued"
                        .into(),
                ))
            }
        };
        for (outcome, recipients) in outcomes.into_iter().zip(groups) {
            match outcome {
                Ok(_) => success_count += recipients.len(),
                Err(err) => failed.extend(
                    recipients
                        .into_iter()
                        .map(|index| (index, format!("not queued: {err}"))),
                ),
            }
        }
    }
    drop(held);
    failed.sort_by_key(|(index, _)| *index);
    let email = |index: usize| request.recipients[index].email.clone();
    Ok(Answer {
        success_count,
        fail_count: failed.len(),
        failed_recipients: failed.iter().map(|(index, _)| email(*index)).collect(),
        errors: failed
            .iter()
            .map(|(index, why)| format!("{}: {why}", email(*index)))
            .collect(),
    })
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An error answer: `{"error": "..."}`.
fn problem(status: StatusCode, error: String) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct Problem {
        error: String,
    }
    json(status, &Problem { error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_addresses_use_the_smtp_grammar() {
        assert_eq!(sender("a@example.com").unwrap().0, b"a@example.com");
        assert_eq!(sender("<a@example.com>").unwrap().0, b"a@example.com");
        assert_eq!(sender("").unwrap().0, b"");
        assert!(sender("not an address").is_err());
        assert!(sender("a@example.com> junk").is_err());
        let (r, utf8) = recipient("B@Example.NET").unwrap();
        assert_eq!(
            (r.address.as_slice(), r.domain.as_str(), utf8),
            (&b"B@Example.NET"[..], "example.net", false)
        );
        assert!(recipient("üser@example.net").unwrap().1);
        assert!(recipient("").is_err());
        assert!(recipient("postmaster").is_err());
        assert!(recipient("a@@b").is_err());
    }
}
