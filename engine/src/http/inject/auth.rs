//! Who sends an injection request: `Authorization: Bearer` with the
//! token of `[http] token_file` (compared in constant time), or HTTP
//! Basic with an `[auth]` user, verified on the AUTH verifier's threads
//! (never on the listener's runtime) and counted by its brute-force
//! guard like SMTP AUTH. No credentials are needed on loopback unless
//! `token_file` or `auth_required` is set.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request as HttpRequest, Response, StatusCode};

use super::{problem, Listener};
use crate::auth::verify::{Credentials, Identity, Verdict};

/// Who sent a request, as its credentials said.
pub(super) struct Client {
    /// An `[auth]` user, by HTTP Basic.
    pub identity: Option<Arc<Identity>>,
    /// The bearer token of `[http] token_file`.
    pub token: bool,
}

/// Checks a request's credentials: `Err` is the 401 to answer.
pub(super) async fn authenticate(
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
