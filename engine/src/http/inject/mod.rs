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

mod auth;
pub mod build;
mod plan;
pub mod request;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_spool::QueueId;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use serde::Serialize;

use crate::admin::AdminToken;
use crate::auth::verify::Identity;
use crate::inbound::{AcceptedRecipient, StoreError};
use crate::log_limit::LogLimit;
use crate::server::Server;
use crate::shard::ShardMsg;

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
pub fn bind(config: &crate::config::Config) -> std::io::Result<Option<std::net::TcpListener>> {
    let Some(address) = config.http.listen else {
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
pub(super) struct Listener {
    pub server: Arc<Server>,
    pub token: Option<AdminToken>,
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
    if server.is_draining() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is draining its queue to another; send elsewhere".into(),
        );
    }
    let client = match auth::authenticate(&request, listener, peer).await {
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
    // As SMTP's RCPT: relaying for authenticated clients and [relay] networks.
    let trusted =
        client.identity.is_some() || client.token || server.config.relay.allows(peer.ip());
    if !trusted {
        return problem(
            StatusCode::FORBIDDEN,
            "relaying denied: authenticate, or inject from a [relay] network".into(),
        );
    }
    let body = match read(request, &server.config.http).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    // Parsing tens of megabytes of JSON, templating, MIME and suppression
    // lookups would hold up the listener's other connections here.
    let planning = {
        let server = server.clone();
        let identity = client.identity.clone();
        tokio::task::spawn_blocking(move || {
            let request = parse(&body, &server.config.http)?;
            drop(body);
            plan::plan(&server, request, identity.as_ref())
        })
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

/// The request's body, within `body_bytes_max` (`413`).
async fn read(
    request: HttpRequest<Incoming>,
    config: &crate::config::HttpConfig,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let body_bytes_max = config.body_bytes_max;
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
        return Err(too_large());
    }
    match Limited::new(request.into_body(), body_bytes_max as usize)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(_) => Err(too_large()),
    }
}

/// The body parsed (`400` naming the field), within
/// `recipients_per_request_max`.
fn parse(
    body: &[u8],
    config: &crate::config::HttpConfig,
) -> Result<Request, Response<Full<Bytes>>> {
    let request =
        Request::parse(body).map_err(|BadRequest(why)| problem(StatusCode::BAD_REQUEST, why))?;
    let recipients_max = config.recipients_per_request_max;
    if request.recipients.len() > recipients_max {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            format!(
                "recipients: {} of them, over http.recipients_per_request_max ({recipients_max})",
                request.recipients.len()
            ),
        ));
    }
    Ok(request)
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
    planned: plan::Planned,
    peer: SocketAddr,
    identity: Option<Arc<Identity>>,
) -> Result<Answer, Response<Full<Bytes>>> {
    let plan::Planned {
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
pub(super) fn problem(status: StatusCode, error: String) -> Response<Full<Bytes>> {
    #[derive(Serialize)]
    struct Problem {
        error: String,
    }
    json(status, &Problem { error })
}
