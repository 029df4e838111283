//! The admin API's HTTP server: hyper (HTTP/1.1) on a current-thread tokio
//! runtime of its own, off the shards. Requests are served concurrently;
//! each is answered by [`super::route`] on tokio's blocking pool, since an
//! operator's request waits for a shard (up to [`super::SHARD_REPLY_TIMEOUT`]).
//!
//! Who may ask: the listener is loopback by default, and a browser on the
//! same host must not be able to drive it (issue 10: a cross-origin POST
//! could flush or bounce the queue). So a request must name the admin
//! address in `Host` by IP literal or `localhost` (a DNS name there is a
//! rebinding attack), and a request with an `Origin` (a browser's) must
//! come from that same origin.
//!
//! With `[admin] token_file`, every request but `GET /health` must carry
//! `Authorization: Bearer <token>`, or it is answered 401 (RFC 6750 §3).
//! `/health` stays open because load balancers' health checks send no
//! token, and it tells nothing but that baton is up. The token, not the
//! `Host` rule, then keeps a browser out (a rebound page has no token), so
//! `Host` may name the API by any name: an operator's DNS name for it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response as HttpResponse, StatusCode};

use super::{route, AdminToken, Response, IO_TIMEOUT, SHARD_REPLY_TIMEOUT};
use crate::http::Serving;
use crate::log_limit::LogLimit;
use crate::server::Server;

/// Connections served at once; past this, new ones are closed at once.
const ADMIN_CONNECTIONS_MAX: usize = 64;
/// The largest request body: a suppression list import of some four
/// million rows; larger lists are imported in several files.
const BODY_BYTES_MAX: usize = 256 * 1024 * 1024;
/// The longest a connection may live, whatever it does.
const ADMIN_CONNECTION_TIME_MAX: Duration = Duration::from_secs(60);

/// The realm of the `WWW-Authenticate` challenge.
const CHALLENGE: &str = "Bearer realm=\"baton admin\"";
/// The challenge to a token that is not the one (RFC 6750 §3.1).
const CHALLENGE_INVALID: &str = "Bearer realm=\"baton admin\", error=\"invalid_token\"";

/// What every connection's requests are checked against.
struct Guard {
    address: SocketAddr,
    token: Option<AdminToken>,
    /// Refused tokens are logged, but a client guessing tokens must not
    /// flood the log.
    refusals: Mutex<LogLimit>,
}

/// Serves `listener` (bound by the caller, so that a bad address fails
/// the start) until the process ends. With `token`, requests must carry it.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    server: Arc<Server>,
    token: Option<AdminToken>,
) {
    let Ok(address) = listener.local_addr() else {
        return;
    };
    let guard = Arc::new(Guard {
        address,
        token,
        refusals: Mutex::new(LogLimit::default()),
    });
    let serving = Serving {
        name: "admin",
        connections_max: ADMIN_CONNECTIONS_MAX,
        io_timeout: IO_TIMEOUT,
        connection_time_max: ADMIN_CONNECTION_TIME_MAX,
        tls: None,
    };
    let answer = move |request, peer| {
        let server = server.clone();
        let guard = guard.clone();
        async move { answer(request, server, &guard, peer).await }
    };
    crate::http::serve(listener, serving, answer).await;
}

async fn answer(
    request: Request<Incoming>,
    server: Arc<Server>,
    guard: &Guard,
    peer: SocketAddr,
) -> HttpResponse<Full<Bytes>> {
    if let Err(why) = allowed(&request, guard.address, guard.token.is_some()) {
        return into_http(Response::text(403, format!("{why}\n")));
    }
    if let Err(refused) = authorized(&request, guard.token.as_ref()) {
        let count = guard.refusals.lock().ok().and_then(|mut limit| limit.hit());
        if let Some(count) = count {
            tracing::warn!(%peer, count, "admin API: request without the right token refused");
        }
        return into_http(refused);
    }
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let import = path == "/suppression/import";
    // Bodies are small JSON, or a suppression list import.
    let body = match Limited::new(request.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return into_http(Response::text(
                413,
                format!("the body is unreadable or over {BODY_BYTES_MAX} bytes\n"),
            ))
        }
    };
    let routed = tokio::task::spawn_blocking(move || route(&method, &path, &query, &body, &server));
    // An import writes and logs a line per row: it gets as long as the
    // connection may last.
    let limit = if import {
        ADMIN_CONNECTION_TIME_MAX
    } else {
        SHARD_REPLY_TIMEOUT + IO_TIMEOUT
    };
    let response = match tokio::time::timeout(limit, routed).await {
        Ok(Ok(response)) => response,
        _ => Response::text(503, "no answer in time\n"),
    };
    into_http(response)
}

/// The `Host` and `Origin` rules of the module docs; with a token, `Host`
/// may be any name.
fn allowed<B>(
    request: &Request<B>,
    address: SocketAddr,
    token_required: bool,
) -> Result<(), &'static str> {
    let host = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|value| value.to_str().ok())
        .ok_or("a Host header is required")?;
    if !token_required && !host_is_admin(host, address) {
        return Err("the Host header must name the admin address by IP or localhost");
    }
    if let Some(origin) = request.headers().get(hyper::header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|origin| origin.strip_prefix("http://"))
            .is_some_and(|origin| origin.eq_ignore_ascii_case(host));
        if !same {
            return Err("cross-origin requests are refused");
        }
    }
    Ok(())
}

/// The token rule of the module docs: `Ok` without a token configured,
/// for `/health`, and for a request that carries the token; else the 401.
/// Its body says what is missing, and never repeats what was sent.
fn authorized<B>(request: &Request<B>, token: Option<&AdminToken>) -> Result<(), Response> {
    let Some(token) = token else {
        return Ok(());
    };
    if request.uri().path() == "/health" {
        return Ok(());
    }
    let presented = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| bearer(value.as_bytes()));
    let (challenge, message) = match presented {
        Some(presented) if token.matches(presented) => return Ok(()),
        Some(_) => (CHALLENGE_INVALID, "the bearer token is not the admin API's"),
        None => (
            CHALLENGE,
            "the admin API needs Authorization: Bearer <the token in [admin] token_file>",
        ),
    };
    Err(Response {
        authenticate: Some(challenge),
        ..Response::refused(401, message.to_owned())
    })
}

/// The credentials of `Bearer <token>`; the scheme is case-insensitive
/// (RFC 7235 §2.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// `127.0.0.1:8025`, `[::1]:8025`, `localhost:8025`: an IP literal or
/// localhost, and the admin port.
fn host_is_admin(host: &str, address: SocketAddr) -> bool {
    let Some((name, port)) = host.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(address.port()) {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn into_http(response: Response) -> HttpResponse<Full<Bytes>> {
    let mut builder = HttpResponse::builder()
        .status(StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(hyper::header::CONTENT_TYPE, response.content_type);
    if let Some(allow) = response.allow {
        builder = builder.header(hyper::header::ALLOW, allow);
    }
    if let Some(challenge) = response.authenticate {
        builder = builder.header(hyper::header::WWW_AUTHENTICATE, challenge);
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| HttpResponse::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn request(host: Option<&str>, origin: Option<&str>) -> Request<()> {
        let mut builder = Request::post("/queue/flush");
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        if let Some(origin) = origin {
            builder = builder.header("origin", origin);
        }
        builder.body(()).unwrap()
    }

    fn allowed_<B>(request: &Request<B>, address: SocketAddr) -> Result<(), &'static str> {
        allowed(request, address, false)
    }

    #[test]
    fn only_the_admin_address_and_its_own_origin_are_served() {
        let address: SocketAddr = "127.0.0.1:8025".parse().unwrap();
        assert!(allowed_(&request(Some("127.0.0.1:8025"), None), address).is_ok());
        assert!(allowed_(&request(Some("localhost:8025"), None), address).is_ok());
        assert!(allowed_(&request(Some("[::1]:8025"), None), address).is_ok());
        assert!(allowed_(
            &request(Some("127.0.0.1:8025"), Some("http://127.0.0.1:8025")),
            address
        )
        .is_ok());
        // DNS rebinding: a name that resolves to 127.0.0.1 for the browser.
        assert!(allowed_(&request(Some("evil.example:8025"), None), address).is_err());
        assert!(allowed_(&request(Some("127.0.0.1:9999"), None), address).is_err());
        assert!(allowed_(&request(None, None), address).is_err());
        // A page elsewhere posting to the API.
        assert!(allowed_(
            &request(Some("127.0.0.1:8025"), Some("http://evil.example")),
            address
        )
        .is_err());
        assert!(allowed_(&request(Some("127.0.0.1:8025"), Some("null")), address).is_err());
    }

    #[test]
    fn with_a_token_any_host_name_will_do_but_not_another_origin() {
        let address: SocketAddr = "0.0.0.0:8025".parse().unwrap();
        assert!(allowed(&request(Some("admin.example:8025"), None), address, true).is_ok());
        let foreign = request(Some("admin.example:8025"), Some("http://evil.example"));
        assert!(allowed(&foreign, address, true).is_err());
        assert!(allowed(&request(None, None), address, true).is_err());
    }

    fn with_authorization(path: &str, authorization: Option<&str>) -> Request<()> {
        let mut builder = Request::get(path).header("host", "127.0.0.1:8025");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn the_token_is_required_except_for_health() {
        let token = AdminToken::parse(TOKEN).unwrap();
        let ok = |path: &str, authorization: Option<&str>| {
            authorized(&with_authorization(path, authorization), Some(&token))
        };
        assert!(ok("/queue", Some(&format!("Bearer {TOKEN}"))).is_ok());
        assert!(ok("/queue", Some(&format!("bearer  {TOKEN} "))).is_ok());
        assert!(ok("/health", None).is_ok());
        // No token configured: as before.
        assert!(authorized(&with_authorization("/queue", None), None).is_ok());
        for (authorization, challenge) in [
            (None::<String>, CHALLENGE),
            (Some("Bearer".to_string()), CHALLENGE),
            (Some(format!("Basic {TOKEN}")), CHALLENGE),
            (Some("Bearer wrong-token-0000000".into()), CHALLENGE_INVALID),
            (Some(format!("Bearer {TOKEN}x")), CHALLENGE_INVALID),
        ] {
            let refused = ok("/queue/flush", authorization.as_deref()).unwrap_err();
            assert_eq!(refused.status, 401, "{authorization:?}");
            assert_eq!(refused.authenticate, Some(challenge), "{authorization:?}");
            assert!(!refused.body.contains("wrong-token"), "{}", refused.body);
            assert!(!refused.body.contains(TOKEN), "{}", refused.body);
        }
    }
}
